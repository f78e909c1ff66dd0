%! -- expect line 4: error object is a nil
%! function kernels() return { main = 'k' } end
% local x = 1
% error(nil)

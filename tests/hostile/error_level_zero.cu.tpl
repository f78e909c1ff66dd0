%! -- expect line 4: no location
%! function kernels() return { main = 'k' } end
% local x = 1
% error('no location', 0)

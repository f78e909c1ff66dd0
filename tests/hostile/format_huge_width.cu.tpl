%! -- expect line 3: invalid conversion
%! function kernels() return { main = 'k' } end
% local s = string.format('%099999999d', 1)

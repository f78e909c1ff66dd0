%! -- expect line 3: memory cap
%! function kernels() return { main = 'k' } end
% local s = string.rep('x', 1 << 30)

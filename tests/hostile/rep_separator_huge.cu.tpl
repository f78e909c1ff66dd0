%! -- expect line 3: memory cap
%! function kernels() return { main = 'k' } end
% local s = string.rep('ab', 1e8, 'cd')

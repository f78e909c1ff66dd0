%! -- expect line 4: time limit
%! function kernels() return { main = 'k' } end
% local a, b = string.rep('x', 20000000), string.rep('x', 20000000)
% while true do local c = a < b end

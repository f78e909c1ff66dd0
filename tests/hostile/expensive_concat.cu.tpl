%! -- expect line 4: time limit
%! function kernels() return { main = 'k' } end
% local s = string.rep('x', 10000000)
% while true do local t = s .. 'y' end

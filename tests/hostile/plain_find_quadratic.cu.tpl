%! -- expect line 3: could take about
%! function kernels() return { main = 'k' } end
% local i = string.rep('a', 3e7):find(string.rep('a', 1e4) .. 'b', 1, true)

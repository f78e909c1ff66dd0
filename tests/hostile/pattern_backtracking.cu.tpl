%! -- expect line 3: could take about
%! function kernels() return { main = 'k' } end
% local i = string.rep('a', 20000):find('.-.-.-b')

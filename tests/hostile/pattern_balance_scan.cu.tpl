%! -- expect line 3: could take about
%! function kernels() return { main = 'k' } end
% local x = string.rep('(', 1e6):match('%b()')

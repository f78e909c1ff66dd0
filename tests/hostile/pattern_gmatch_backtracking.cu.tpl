%! -- expect line 3: could take about
%! function kernels() return { main = 'k' } end
% for w in string.rep('a', 1e6):gmatch('a*a*a*b') do end

%! -- expect line 3: could backtrack
%! function kernels() return { main = 'k' } end
% local x = string.rep('(', 1e6):match('%b()')

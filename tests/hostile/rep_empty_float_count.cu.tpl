%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% while true do local s = ('').rep('', 1e10) end

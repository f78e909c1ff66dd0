%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% local s = ('abc'):gsub('.', function() while true do end end)

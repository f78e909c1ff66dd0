%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% while true do xpcall(function() while true do end end, function() while true do end end) end

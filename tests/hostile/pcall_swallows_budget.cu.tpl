%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% while true do pcall(function() while true do end end) end

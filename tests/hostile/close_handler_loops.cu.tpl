%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% do local x <close> = setmetatable({}, { __close = function() while true do end end }) end

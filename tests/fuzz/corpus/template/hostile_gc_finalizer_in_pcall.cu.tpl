%! function kernels() return { main = 'k' } end
% pcall(setmetatable, {}, { __gc = function() while true do end end })
% while true do end

%! function kernels() return { main = "k" } end
% pcall(function() while true do end end)
% setmetatable({}, { __gc = print })

%! function kernels() return { main = 'k' } end
% error(setmetatable({}, { __tostring = function() while true do end end }))

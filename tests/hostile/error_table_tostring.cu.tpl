%! -- expect line 3: error object is a table
%! function kernels() return { main = 'k' } end
% error(setmetatable({}, { __tostring = function() while true do end end }))

%! -- expect line 3: __gc metamethods are not allowed
%! function kernels() return { main = 'k' } end
% setmetatable({}, { __gc = function() while true do end end })

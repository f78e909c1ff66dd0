%! -- expect line 3: stack overflow
%! function kernels() return { main = 'k' } end
% local t = setmetatable({}, { __index = function(t, k) return t[k] end })
% local x = t.x

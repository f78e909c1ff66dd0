%! -- expect line 4: metamethod
%! function kernels() return { main = 'k' } end
% local t = setmetatable({}, { __len = function() return 2^31 - 2 end, __index = type, __newindex = rawequal })
% table.sort(t)

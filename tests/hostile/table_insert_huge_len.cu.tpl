%! -- expect line 4: __len metamethod
%! function kernels() return { main = 'k' } end
% local t = setmetatable({}, { __len = function() return math.maxinteger - 1 end })
% table.insert(t, 1, 'x')

%! -- expect line 3: __index metamethod
%! function kernels() return { main = 'k' } end
% local s = table.concat(setmetatable({}, { __index = rawlen }), '', 1, math.maxinteger)

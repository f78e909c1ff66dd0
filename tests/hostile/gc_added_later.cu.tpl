%! -- expect line 5: finished
%! function kernels() return { main = 'k' } end
% local mt = {}
% local t = setmetatable({}, mt); mt.__gc = function() while true do end end
% error('finished: a __gc added after setmetatable never runs')

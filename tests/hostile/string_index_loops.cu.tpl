%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
% getmetatable('').__index = function() while true do end end
% local x = ('a').foo

%! -- expect line 4: chain too long
%! function kernels() return { main = 'k' } end
% local t = {}
% setmetatable(t, { __index = t }); local x = t.y

%! -- expect line 4: memory cap
%! function kernels() return { main = 'k' } end
% local t = {}
% while true do t[#t + 1] = {} end

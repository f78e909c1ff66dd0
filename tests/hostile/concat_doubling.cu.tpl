%! -- expect line 4: memory cap
%! function kernels() return { main = 'k' } end
% local s = 'x'
% while true do s = s .. s end

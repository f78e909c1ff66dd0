%! -- expect line 3: stack overflow|memory cap
%! function kernels() return { main = 'k' } end
% local function f() return f() + 1 end
% f()

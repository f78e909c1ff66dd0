%! -- expect line 3: include() calls
%! function kernels() return { main = 'k' } end
% for i = 1, 1e9 do include('empty.cuh.tpl') end

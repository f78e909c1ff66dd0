%! -- expect line 3: include cycle include_cycle.cu.tpl -> cycle_a.cuh.tpl -> cycle_b.cuh.tpl -> cycle_a.cuh.tpl
%! function kernels() return { main = 'k' } end
% include('cycle_a.cuh.tpl')

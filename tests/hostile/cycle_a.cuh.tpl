a
% include('cycle_b.cuh.tpl')

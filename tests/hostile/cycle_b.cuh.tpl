b
% include('cycle_a.cuh.tpl')

%! -- expect line 4: budget of|time limit
%! function kernels() return { main = 'k' } end
% ::top::
% goto top

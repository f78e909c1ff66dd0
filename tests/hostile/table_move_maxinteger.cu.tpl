%! -- expect line 3: table.move
%! function kernels() return { main = 'k' } end
% table.move({}, 1, math.maxinteger, 1, {})

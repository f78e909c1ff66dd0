%! -- expect line 3: budget of|time limit
%! function kernels() return { main = 'k' } end
%! knobs = { a = {1, 2} }; function valid() while true do end end

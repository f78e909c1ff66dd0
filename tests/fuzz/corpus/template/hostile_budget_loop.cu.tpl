%! function kernels() return { main = 'k' } end
% while true do end

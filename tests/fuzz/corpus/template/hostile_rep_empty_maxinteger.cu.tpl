%! function kernels() return { main = 'k' } end
% while true do local s = string.rep('', math.maxinteger) end

%! function kernels() return { main = 'k' } end
% local hog = {}
% while true do pcall(function() while true do hog[#hog + 1] = {} end end) end

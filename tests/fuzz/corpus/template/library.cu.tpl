%! function kernels() return { main = "k" } end
% local s = string.rep("ab", 10, ",")
$(s:gsub("a", "x")) $(s:find("b,", 1, true)) $(string.format("%5.2f", 1/3))
% local t = {3, 1, 2}; table.sort(t); table.insert(t, 4)
$(table.concat(t, ",")) $(select("#", table.unpack(t)))

%! -- expect line 3: nil value
%! function kernels() return { main = 'k' } end
% coroutine.wrap(function() while true do coroutine.yield() end end)()

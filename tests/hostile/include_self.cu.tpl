%! -- expect line 3: include cycle
%! function kernels() return { main = 'k' } end
% for i = 1, 10 do pcall(include, 'include_self.cu.tpl') end include('include_self.cu.tpl')

%! knobs = { a = {1, 2}, b = {3} }
%! function valid(s, a, p) return p.a < 2, "too big" end
%! function kernels(s, p) return { main = "k<" .. p.a .. ">" } end
%! function launch(s, p) return { threads = 32 * p.a, smem = 0 } end
// $(spec.name) $(arch.sm) $$ $("x")
% for i = 1, point.a do
int v$(i) = $(i * 2.5);
% end
% include("common.cuh.tpl")

-- warmup.lua — coefficient schedules for balancing losses.
--
-- linear(epoch, from, to, epochs): the router-anti-collapse seed's warm-up,
--   coef = from + min(1, epoch / epochs) * (to - from)
-- so with from = 1e-5, to = 5e-4, epochs = 20: epoch 1 -> 3.45e-5, epoch 10 -> 2.55e-4,
-- epoch 20 and after -> 5e-4 (the seed's table).
local M = {}

function M.linear(epoch, from, to, epochs)
  if epochs <= 0 then return to end
  local f = math.min(1, epoch / epochs)
  return from + f * (to - from)
end

return M

-- train.lua — moelab's default training loop, in plain Lua.
--
-- Per epoch: warm up the load-balance coefficient, train (asking the growth-schedule
-- plugin after every step whether to add or remove experts), evaluate, check each MoE layer's
-- routing health and raise a warning event when a layer has collapsed, and keep the best
-- checkpoint by validation loss. Settings come from the config's `params:` section:
--
--   params:
--     warmup_loss: load_balance   # which loss to warm up (skipped if the run has none)
--     coef_min: 1.0e-5            # the router-anti-collapse seed's 1e-5 -> 5e-4 over 20 epochs
--     coef_max: 5.0e-4
--     warmup_epochs: 20
--     on_collapse: warn           # warn | raise_coef (multiply the coefficient by 2 and
--                                 #   resume from the best checkpoint, the seed's intervention)
--
-- Resuming (`moelab run --resume RUN_DIR`): the script runs again with exp.resumed = true
-- and exp.epoch = the epochs already done, so the loop starts at exp.epoch + 1. Whatever
-- must survive an interruption lives in exp.state (saved in every checkpoint): here the
-- best validation loss and the coefficient ceiling the intervention may have raised.
-- An epoch's work ends with save_checkpoint("last"), after exp:log, so "last" holds the
-- epoch complete; an interrupt mid-epoch is continued by exp:train_epoch itself.

local cfg = exp.config
local P = cfg.params or {}
local warmup = require("warmup")

local warm_name = P.warmup_loss or "load_balance"
local warm_loss = exp.losses[warm_name]
local coef_min = P.coef_min or 1e-5
local warm_epochs = P.warmup_epochs or 20
local on_collapse = P.on_collapse or "warn"
local ckpt_every = cfg.results.checkpoint_every or 0

-- Growth: the schedule plugin decides, the script carries it out, layer by layer: the
-- removals first (their ids name the experts before the decision), then the additions,
-- which start as the config's growth.init says (random, copy or drop_upcycle).
local function grow()
  local d = exp.schedule:decide()
  if d then
    for layer, step in ipairs(d.layers) do
      if #step.remove > 0 then exp.moe[layer]:remove_experts(step.remove, exp.schedule.name) end
      if step.add > 0 then exp.moe[layer]:add_experts(step.add, exp.schedule.name) end
    end
  end
end

local S = exp.state
S.best = S.best or math.huge
S.coef_max = S.coef_max or P.coef_max or 5e-4

for epoch = exp.epoch + 1, cfg.train.epochs do
  if warm_loss then
    warm_loss.coef = warmup.linear(epoch, coef_min, S.coef_max, warm_epochs)
  end

  local tr = exp:train_epoch{ on_step = grow }
  local ev = exp:evaluate()

  for i, layer in ipairs(exp.moe) do
    local s = layer:stats()
    if s.collapsed then
      moelab.warn(string.format(
        "epoch %d: MoE layer %d has collapsed: %d of %d experts active, effective experts %.2f "
          .. "for %.2f per sample, normalised marginal entropy %.3f",
        epoch, i, s.active, s.num_experts, s.effective_experts, s.slots_per_sample, s.entropy_norm))
      exp:event("collapse", { layer = i, active = s.active, experts = s.num_experts,
                              effective_experts = s.effective_experts, k = s.slots_per_sample,
                              entropy_norm = s.entropy_norm, cv = s.cv })
      if on_collapse == "raise_coef" and warm_loss and S.best < math.huge then
        -- "best" may predate experts added since: load_checkpoint keeps the newer ones
        S.coef_max = S.coef_max * 2
        warm_loss.coef = math.max(warm_loss.coef * 2, S.coef_max)
        exp:load_checkpoint("best")
        exp:event("intervention", { action = "raise_coef_and_resume_best", loss = warm_name,
                                    coef = warm_loss.coef })
      end
    end
  end

  if ev.loss < S.best then
    S.best = ev.loss
    exp:save_checkpoint("best")
  end
  exp:log{ best_val_loss = S.best }
  if ckpt_every > 0 and epoch % ckpt_every == 0 then
    exp:save_checkpoint(string.format("epoch%d", epoch))
  end
  exp:save_checkpoint("last") -- last: everything of this epoch is in it
end

-- cod.lua — the router-anti-collapse seed's recipe for the camouflage segmentation MoE
-- (model.type: cod; docs/cod.md), in plain Lua. Per epoch:
--   1. warm the load-balance coefficient up linearly (the seed: 1e-5 -> 5e-4 over 20 epochs);
--   2. train (staged: the encoder frozen for the first freeze_backbone_epochs, then tuned);
--   3. evaluate (IoU, Dice, S, E, weighted F, MAE on the validation set);
--   4. monitor every MoE layer with moelab's collapse signals (docs/metrics.md) AND the
--      seed's own rule — the weighted load-balance loss below 1e-4 after the warm-up means
--      "collapsed", above 0.01 "unstable" — logging both, so where they disagree shows;
--   5. on collapse (by the chosen detector) intervene as the seed does: raise the coefficient
--      to raise_to (1e-3) and resume from the best checkpoint;
--   6. keep the best checkpoint by validation IoU.
-- Settings come from the config's params: section (defaults are the seed's):
--
--   params:
--     warmup_loss: load_balance   # the coefficient that warms up (skipped if the run has none)
--     coef_min: 1.0e-5
--     coef_max: 5.0e-4
--     warmup_epochs: 20
--     monitor: true               # false: no monitor, no intervention (the seed's "before")
--     detector: moelab            # moelab | seed: which signal the intervention listens to
--     seed_rule_after: 20         # the seed checks its rule only after this epoch
--     seed_rule_low: 1.0e-4       # weighted LB below this: "collapsed" by the seed's rule
--     seed_rule_high: 0.01        # above this: "unstable"
--     on_collapse: raise_coef     # raise_coef | warn | none
--     raise_to: 1.0e-3
--     max_interventions: 3
--     freeze_backbone_epochs: 0   # staged training: enc.* frozen for this many epochs
--
-- The seed's rule reads the load-balance term as the seed printed it: the coefficient times
-- the Switch loss N·Σ f_i·P_i of the epoch (mean over steps and layers). A LOW value means
-- balance (≈ coef), not collapse (docs/metrics.md, "Two rules that mislead"), which is why
-- the monitor logs moelab's signals beside it. Resumable: what must survive lives in exp.state.

local cfg = exp.config
local P = cfg.params or {}
local warmup = require("warmup")

local warm_name = P.warmup_loss or "load_balance"
local warm_loss = exp.losses[warm_name]
local coef_min = P.coef_min or 1e-5
local warm_epochs = P.warmup_epochs or 20
local monitor = P.monitor ~= false
local detector = P.detector or "moelab"
local rule_after = P.seed_rule_after or 20
local rule_low = P.seed_rule_low or 1e-4
local rule_high = P.seed_rule_high or 0.01
local on_collapse = P.on_collapse or "raise_coef"
local raise_to = P.raise_to or 1e-3
local max_interventions = P.max_interventions or 3
local freeze_epochs = P.freeze_backbone_epochs or 0

assert(detector == "moelab" or detector == "seed", "params.detector: expected moelab or seed, got " .. tostring(detector))
assert(on_collapse == "raise_coef" or on_collapse == "warn" or on_collapse == "none",
       "params.on_collapse: expected raise_coef, warn or none, got " .. tostring(on_collapse))

local S = exp.state
S.best = S.best or -math.huge          -- best validation IoU so far
S.coef_max = S.coef_max or P.coef_max or 5e-4
S.interventions = S.interventions or 0

local function grow()
  local add = exp.schedule:decide()
  if add then
    for layer, n in pairs(add) do
      if n > 0 then exp.moe[layer]:add_experts(n, exp.schedule.name) end
    end
  end
end

for epoch = exp.epoch + 1, cfg.train.epochs do
  if warm_loss then
    warm_loss.coef = warmup.linear(epoch, coef_min, S.coef_max, warm_epochs)
  end
  -- staged training: stage 1 trains the MoE layers and the decoder on a frozen encoder
  if freeze_epochs > 0 then
    local want = epoch <= freeze_epochs
    if want ~= (S.frozen or false) then
      if want then exp:freeze("enc.*") else exp:unfreeze("enc.*") end
      S.frozen = want
    end
  end

  local tr = exp:train_epoch{ on_step = grow }
  local ev = exp:evaluate()

  -- the monitor: moelab's signals per layer, and the seed's rule on the weighted LB
  local collapsed_layers = 0
  for i, layer in ipairs(exp.moe) do
    local s = layer:stats()
    if s.collapsed then
      collapsed_layers = collapsed_layers + 1
      if monitor then
        moelab.warn(string.format(
          "epoch %d: MoE layer %d has collapsed: %d of %d experts active, effective experts %.2f for %.2f per image",
          epoch, i, s.active, s.num_experts, s.effective_experts, s.slots_per_sample))
        exp:event("collapse", { layer = i, active = s.active, experts = s.num_experts,
                                effective_experts = s.effective_experts, entropy_norm = s.entropy_norm })
      end
    end
  end
  local coef = warm_loss and warm_loss.coef or 0
  local lb = tr[warm_name]                       -- the epoch's Switch LB, mean over steps and layers
  local weighted = lb and coef * lb or nil
  local rule = 0                                 -- the seed's rule: 1 collapsed, -1 unstable, 0 ok
  if weighted and epoch >= rule_after then
    if weighted < rule_low then rule = 1 elseif weighted > rule_high then rule = -1 end
  end
  exp:log{ collapsed_layers = collapsed_layers, seed_rule = rule, seed_lb_weighted = weighted or 0 / 0,
           interventions = S.interventions }
  if monitor and rule ~= 0 then
    moelab.warn(string.format("epoch %d: the seed's rule says %s (coef x LB = %.3g)", epoch,
                              rule == 1 and "collapsed" or "unstable", weighted))
    exp:event("seed_rule", { verdict = rule == 1 and "collapsed" or "unstable", weighted_lb = weighted,
                             moelab_collapsed_layers = collapsed_layers })
  end

  local detected = (detector == "moelab" and collapsed_layers > 0) or (detector == "seed" and rule == 1)
  if monitor and detected and on_collapse == "raise_coef" and warm_loss and S.best > -math.huge
     and S.interventions < max_interventions then
    S.coef_max = math.max(S.coef_max, raise_to)
    warm_loss.coef = raise_to
    S.interventions = S.interventions + 1
    exp:load_checkpoint("best")
    exp:event("intervention", { action = "raise_coef_and_resume_best", loss = warm_name, coef = raise_to,
                                detector = detector, n = S.interventions })
  end

  if ev.iou and ev.iou > S.best then
    S.best = ev.iou
    exp:save_checkpoint("best")
  end
  exp:log{ best_val_iou = S.best }
  exp:save_checkpoint("last")
end

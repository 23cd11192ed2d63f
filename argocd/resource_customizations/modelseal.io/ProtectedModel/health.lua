-- Argo CD health check for modelseal.io/ProtectedModel (Argo CD's Lua health API: the
-- resource is the global `obj`; the script returns a table with `status` and `message`).
-- Written for Lua 5.1 (gopher-lua, as Argo CD embeds) and tested with Lua 5.4.
--
--   no status yet, or status older than the spec          -> Progressing
--   Degraded=True                                         -> Degraded
--   Ready=True, Progressing=True (a rollout)              -> Progressing
--   Ready=True                                            -> Healthy
--   Ready=False, Progressing=True (still converging)      -> Progressing
--   Ready=False, reason ScaledToZero (replicas: 0)        -> Suspended
--   Ready=False otherwise (license, Vault, artifact...)   -> Degraded
--   Ready Unknown or missing                              -> Progressing
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local text = fallback
  if c ~= nil then
    if c.message ~= nil and c.message ~= "" then
      text = c.message
    end
    if c.reason ~= nil and c.reason ~= "" then
      text = c.reason .. ": " .. text
    end
  end
  return text
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Modelseal operator to report status"
  return hs
end

local status = obj.status
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Modelseal operator to observe generation " .. tostring(generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local degraded = find(status.conditions, "Degraded")
local progressing = find(status.conditions, "Progressing")

-- A condition written for an older generation says nothing about the current spec.
if ready ~= nil and generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Modelseal operator to evaluate generation " .. tostring(generation)
  return hs
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "The model is degraded")
  return hs
end

local rolling = progressing ~= nil and progressing.status == "True"

if ready ~= nil and ready.status == "True" then
  if rolling then
    hs.status = "Progressing"
    hs.message = describe(progressing, "Rolling out")
    return hs
  end
  hs.status = "Healthy"
  local text = describe(ready, "Serving")
  if status.servedVersion ~= nil and status.servedVersion ~= "" then
    text = text .. " (version " .. status.servedVersion .. ")"
  end
  hs.message = text
  return hs
end

if ready ~= nil and ready.status == "False" then
  if rolling then
    hs.status = "Progressing"
    hs.message = describe(ready, "Not ready yet")
    return hs
  end
  if ready.reason == "ScaledToZero" then
    hs.status = "Suspended"
    hs.message = describe(ready, "Scaled to zero")
    return hs
  end
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the model to become ready")
return hs

-- Argo CD health check for modelseal.io/ModelLicense (Argo CD's Lua health API: the
-- resource is the global `obj`; the script returns a table with `status` and `message`).
-- Written for Lua 5.1 (gopher-lua, as Argo CD embeds) and tested with Lua 5.4.
--
--   no status yet, or status older than the spec          -> Progressing
--   Revoked=True or Expired=True                          -> Degraded
--   QuotaExhausted=True                                   -> Degraded (calls get 429)
--   Valid=True                                            -> Healthy
--   Valid=False, reason LicenseNotYetValid (not begun)   -> Suspended
--   Valid=False otherwise                                 -> Degraded
--   Valid Unknown or missing                              -> Progressing
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
  hs.message = "Waiting for the Modelseal operator to evaluate the license"
  return hs
end

local status = obj.status
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Modelseal operator to observe generation " .. tostring(generation)
  return hs
end

local revoked = find(status.conditions, "Revoked")
if revoked ~= nil and revoked.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(revoked, "The license is revoked")
  return hs
end

local expired = find(status.conditions, "Expired")
if expired ~= nil and expired.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(expired, "The license has expired")
  return hs
end

local exhausted = find(status.conditions, "QuotaExhausted")
if exhausted ~= nil and exhausted.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(exhausted, "A request quota is exhausted")
  return hs
end

local valid = find(status.conditions, "Valid")
if valid ~= nil and valid.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(valid, "The license is valid")
  return hs
end

if valid ~= nil and valid.status == "False" then
  if valid.reason == "LicenseNotYetValid" then
    hs.status = "Suspended"
    hs.message = describe(valid, "The license's validity window has not begun")
    return hs
  end
  hs.status = "Degraded"
  hs.message = describe(valid, "The license is not valid")
  return hs
end

hs.status = "Progressing"
hs.message = describe(valid, "Waiting for the license to be evaluated")
return hs

# make attack: the attack suite (tests/attack/) alone, against the real servers. Each test
# tries to get around one protection as a tenant with edit rights would; the last line is
# attacks: tried=<n> refused=<n> lost_records=<n> leaked=<n>   (counted by tests/attack/conftest.py)
ATTACK_SUMMARY := .attack-summary

.PHONY: attack
attack: system-deps venv testservers chart-crds-check ## run every attack test; last line: attacks: tried=.. refused=..
	@rm -f $(ATTACK_SUMMARY)
	@rc=0; MODELSEAL_ATTACK_SUMMARY=$(ATTACK_SUMMARY) $(VENV)/bin/pytest tests/attack $(PYTEST_ARGS) || rc=$$?; \
	  if [[ -s $(ATTACK_SUMMARY) ]]; then cat $(ATTACK_SUMMARY); else echo "attacks: tried=0 refused=0 lost_records=0 leaked=0"; fi; \
	  exit $$rc

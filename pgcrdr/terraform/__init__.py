"""pgcrdr's Terraform provider: answers to the source ``aiven/aiven`` (see README, Terraform)."""

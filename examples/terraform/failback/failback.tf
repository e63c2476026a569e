# Failback, step 2 (the seed's Terraform tab): re-establish CRDR with the original primary as
# active. Applying it after a failover restores the primary as a passive copy of the recovery
# service, waits until it is RUNNING, then promotes it: `terraform apply` returns once the
# primary is active and the recovery service passive.

resource "aiven_service_integration" "disaster_recovery_restored" {
  project                  = var.project_name
  integration_type         = "disaster_recovery"
  source_service_name      = aiven_postgresql.primary.service_name  # Original primary back to active
  destination_service_name = aiven_postgresql.recovery.service_name # Back to passive role

  depends_on = [
    aiven_postgresql.primary,
    aiven_postgresql.recovery
  ]
}

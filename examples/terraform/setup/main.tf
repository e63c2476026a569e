# Cross-region disaster recovery set up: a primary service, a recovery service in another
# region, and the disaster_recovery integration that makes the recovery service its passive copy
# (the Aiven CRDR setup page's Terraform tab).

resource "aiven_postgresql" "primary" {
  project      = var.project_name
  service_name = var.primary_service_name
  plan         = var.service_plan
  cloud_name   = var.primary_cloud_region
}

resource "aiven_postgresql" "recovery" {
  project      = var.project_name
  service_name = var.recovery_service_name
  plan         = var.service_plan
  cloud_name   = var.recovery_cloud_region
}

# Disaster recovery integration: source = the active service, destination = the passive one.
resource "aiven_service_integration" "disaster_recovery" {
  project                  = var.project_name
  integration_type         = "disaster_recovery"
  source_service_name      = aiven_postgresql.primary.service_name
  destination_service_name = aiven_postgresql.recovery.service_name

  depends_on = [
    aiven_postgresql.primary,
    aiven_postgresql.recovery
  ]
}

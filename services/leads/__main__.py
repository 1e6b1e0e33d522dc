from services.leads.main import service
from shared.service import serve

serve(service)
